Rails.application.routes.draw do
  root "employees#index"
  resources :employees, only: %i[index new create]
  get "health", to: "health#show"
end
